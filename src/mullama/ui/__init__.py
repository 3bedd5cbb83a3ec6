"""The web UI's static files (HTML, CSS, ES modules), served by ``api/ui.py``."""
