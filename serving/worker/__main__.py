"""``python -m serving.worker``: see ``serving.worker.server``."""

from serving.worker.server import main

main()
