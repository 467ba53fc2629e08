"""Fixed paths: where things appear inside an agent's container, and the publisher's state folder."""

SOURCE_TARGET = "/workspace/src"
OUTPUT_TARGET = "/workspace/output"
SHARED_TARGET = "/workspace/shared"
HOME_TARGET = "/home/agent"
TMP_TARGET = "/tmp"

# The publisher's private records inside the output tree: locks, holders, staging, ledger.
STATE_FOLDER = ".orchestrate"
