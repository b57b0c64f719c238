"""One module per page group; each exports `routes` (a list of Starlette routes)."""
