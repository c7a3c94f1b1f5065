import sys

from stream_node.cli import main

sys.exit(main())
