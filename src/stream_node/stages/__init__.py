"""The roles of a run: source, worker, collector. Each is a loop over links; the stages are the
only data-path modules that start the status server beside them."""
