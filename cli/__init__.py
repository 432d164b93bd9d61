"""sgdreg's command-line front end (Typer): parse, call the library, print, write."""
