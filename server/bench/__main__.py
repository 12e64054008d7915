"""`python -m server.bench ...` = `actmax bench ...`."""

import sys

from server.bench import cli_main

sys.exit(cli_main())
