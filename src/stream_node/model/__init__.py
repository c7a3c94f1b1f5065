"""What every part speaks: the frame header, the errors and their exit codes, the run contract.

Imports nothing else of the package but the native frame codec (`_native._frame`).
"""
