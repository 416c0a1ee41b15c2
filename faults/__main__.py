import sys

from faults.harness import main

sys.exit(main())
