import sys

from mmcontrast.cli import main

sys.exit(main())
