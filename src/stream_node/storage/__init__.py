"""The run file: the HDF5 layout and its writer, the reader (`read_run`), the printed summary."""
