"""Transport security: TLS contexts, certificates for small deployments, secret files."""
