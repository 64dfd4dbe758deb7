//! AWS Secrets Manager rendezvous backend.
