"""What the supervisor tests' fork server imports before it forks tests.support.forked_child: it
notes which process imported it (the fork server, when the preload worked)."""

import os

IMPORTED_IN = os.getpid()
