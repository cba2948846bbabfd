"""``python -m triagegate`` runs the command line."""

import sys

from triagegate.cli import main

sys.exit(main())
