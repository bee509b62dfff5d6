import sys

from codistill.cli import main

sys.exit(main())
