import sys

from resnext_lit.cli import main

sys.exit(main())
