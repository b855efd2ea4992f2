import sys

from dsexport.cli.commands import main

sys.exit(main())
