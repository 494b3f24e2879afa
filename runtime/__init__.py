"""fnhost's host side: settings, models, store, broker, scheduler and warm pool."""
