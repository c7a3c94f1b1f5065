"""Watching a run: status server and client, Prometheus metrics, the newest-frame tap, the live
terminal view and the picture viewer, log formats. Reads counters; never sits on the data path."""
