"""Small helpers every layer may use (the gateway, the mirror, the workflow, the project's
settings): they import nothing of the project's apps."""
