"""A region: training logic, its peer inbox, and the gRPC service around it."""
