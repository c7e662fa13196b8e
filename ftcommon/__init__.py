"""The one library every service may import: settings, gRPC runtime, storage, jobs."""
