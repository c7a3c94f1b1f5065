"""How frames move: the shared-memory ring, ZeroMQ links, credit-based reliable dispatch, the
control plane beside the data, CURVE keys. Imports only the model and the native ring."""
