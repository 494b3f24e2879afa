"""The in-container agent: stdlib plus cloudpickle, copied into the runtime image."""
