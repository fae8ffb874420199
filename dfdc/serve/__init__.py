"""``dfdc serve``: a web page and a JSON API that score one uploaded video with a bundle."""
