"""The only package that talks gRPC: request handling, conversions, error mapping, the server."""
