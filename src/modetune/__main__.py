import sys

from modetune.cli import main

sys.exit(main())
