"""The governed pipeline assembled from the steps, its definition JSON and the local runner."""
