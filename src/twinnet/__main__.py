import sys

from twinnet.cli import main

sys.exit(main())
