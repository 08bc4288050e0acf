"""Importers: each turns one source layout into an import plan that `common.run_import` converts."""
