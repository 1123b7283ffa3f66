"""The web portal: pages for institutions and operators (``govesb portal``)."""
