import sys

from watchd.forward.child import main

sys.exit(main())
