"""Running stages on hosts: topology files, where each setting comes from, the launcher of one
host's stages, the one-host demo pipeline."""
