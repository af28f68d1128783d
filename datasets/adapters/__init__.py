"""One module per dataset family; each registers its adapter(s) with ``@register_dataset``."""
