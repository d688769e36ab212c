"""Infrastructure every stage uses, knowing nothing of the method: workdir files on a disk or in a
bucket (files), the device mesh (parallel), verified checkpoints (checkpoint_io), the compilation
cache, error types, the launch scripts' error handling (cli) and Ctrl-C/SIGTERM stops
(interrupt)."""
