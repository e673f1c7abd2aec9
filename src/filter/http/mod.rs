//! HTTP filters, run per request by the HTTP connection manager.
