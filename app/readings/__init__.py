"""Readings: devices push measurements; clients read them back as bucketed time series."""
