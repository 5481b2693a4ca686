"""The only package that talks SQL: tables, the repository, migrations."""
