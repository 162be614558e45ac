# Sourced by scripts/dev and scripts/test: make .venv and install the project into it.
ensure_venv() {
    extras="$1"
    stamp=".venv/.installed$extras"
    if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
        return
    fi
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        # Debian ships venv support separately from the interpreter.
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        else
            echo "python3 cannot create virtualenvs here: install python3-venv (as root: apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e ".$extras"
    touch "$stamp"
}
