"""The shop's web pages: server-rendered HTML over the same backends the API reaches.

The handlers, by what a page is for: ``catalogue`` (the shop window and a product),
``account`` (register, log in and out, the profile), ``cart`` (the cart and checkout),
``orders`` (a shopper's orders) and ``admin`` (the catalogue and every order, for
administrators); ``svc_gateway/routes.py`` lists which path each one answers.

A handler calls the backends with the shopper's token (``backend``), renders a template
(``rendering``) and raises to leave: ``Redirect`` for Post/Redirect/Get (``access``),
``NotFound`` / ``Forbidden`` (shopkit's errors) for an error page, and a backend's refusal
arrives as ``BackendRefused``. A form that changes something is sent with
``forms.submit_form``. The page middleware (``middleware``) turns all of that into HTML
(error pages instead of the API's JSON envelope, which ``/api/*`` keeps), checks the CSRF
token of every form post, writes the session cookies back and adds the security headers.
"""
