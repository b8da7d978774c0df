import sys

from tests.deploy.local import main

sys.exit(main(sys.argv))
