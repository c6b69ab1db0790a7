"""loyalist: purchase-behaviour insight for customer retention from transaction records."""

__version__ = "0.1.0"
