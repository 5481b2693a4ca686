"""kms serve --workers: a supervisor and N worker processes on one port.

The supervisor side (listener, supervisor, status) never imports the service's adapters; a
worker (worker) is the whole service in a process of its own.
"""
