"""The docs' pages, and the script that makes their pictures, run from the repository's folder as
`.venv/bin/python -m docs.pictures`."""
