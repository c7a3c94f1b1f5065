"""Private compiled core; import the public names from `stream_node`."""
