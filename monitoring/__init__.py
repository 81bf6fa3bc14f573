"""Image features shared by validation, serving's request log and the drift monitor."""
