"""The shop window: the catalogue (search, filters, sort, pages) and a product's page."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiMapping

from shopkit.domain import MAX_CART_QUANTITY
from svc_gateway.pages.backend import (
    BackendRefused,
    call_backend,
    call_backend_or_raise,
    finish_all,
)
from svc_gateway.pages.forms import readable
from svc_gateway.pages.params import PRODUCT_NOT_FOUND, page_numbers, page_of, product_id_of
from svc_gateway.pages.rendering import render

CATALOGUE_PAGE_SIZE = 12
SORTS = {
    "-createdAt": "Newest first",
    "price": "Price: low to high",
    "-price": "Price: high to low",
    "name": "Name: A to Z",
}
DEFAULT_SORT = "-createdAt"
FILTER_LABELS = {
    "q": "Search",
    "category": "Category",
    "minPrice": "Lowest price",
    "maxPrice": "Highest price",
    "page": "Page",
}


@dataclass(frozen=True)
class CatalogueFilters:
    """The catalogue's search, filters, sort and page, as the page's query string holds them
    (the same names the product API uses)."""

    q: str = ""
    category: str = ""
    min_price: str = ""
    max_price: str = ""
    in_stock: bool = False
    sort: str = DEFAULT_SORT
    page: int = 1

    @classmethod
    def from_query(cls, query: MultiMapping[str]) -> CatalogueFilters:
        def text(name: str, limit: int) -> str:
            return query.get(name, "").strip()[:limit]

        sort = query.get("sort", DEFAULT_SORT)
        return cls(
            q=text("q", 100),
            category=text("category", 60),
            min_price=text("minPrice", 20),
            max_price=text("maxPrice", 20),
            in_stock=query.get("inStock") == "true",
            sort=sort if sort in SORTS else DEFAULT_SORT,
            page=page_of(query),
        )

    @property
    def active(self) -> bool:
        """Anything narrower than the whole catalogue."""
        return bool(self.q or self.category or self.min_price or self.max_price or self.in_stock)

    def params(self, **changes: str) -> dict[str, str]:
        """The query string's values (defaults left out), with ``changes`` applied; a change
        to "" drops that value."""
        values = {
            "q": self.q,
            "category": self.category,
            "minPrice": self.min_price,
            "maxPrice": self.max_price,
            "inStock": "true" if self.in_stock else "",
            "sort": "" if self.sort == DEFAULT_SORT else self.sort,
            "page": "" if self.page == 1 else str(self.page),
        }
        values.update(changes)
        return {name: value for name, value in values.items() if value}

    def url(self, **changes: str) -> str:
        """This catalogue page with ``changes``; changing a filter goes back to page 1."""
        if "page" not in changes:
            changes["page"] = ""
        params = self.params(**changes)
        return "/?" + urlencode(params) if params else "/"

    def page_url(self, page: int) -> str:
        return self.url(page="" if page == 1 else str(page))

    def api_query(self) -> str:
        params = self.params(page=str(self.page), limit=str(CATALOGUE_PAGE_SIZE))
        if self.sort != DEFAULT_SORT:
            params["sort"] = self.sort
        return urlencode(params)


async def home(request: web.Request) -> web.Response:
    filters = CatalogueFilters.from_query(request.query)
    listing, categories = await finish_all(
        call_backend(
            request, "product", "GET", "/api/products?" + filters.api_query(), as_shopper=False
        ),
        call_backend_or_raise(
            request, "product", "GET", "/api/products/categories", as_shopper=False
        ),
    )
    problem = None
    if listing.status == 400:
        # A filter the API refuses (a price that is not a number...): say which, show none.
        problem = readable(BackendRefused(listing), FILTER_LABELS)
        products, total = [], 0
    elif listing.status >= 400:
        raise BackendRefused(listing)
    else:
        products, total = listing.body["data"], listing.body["total"]
    last_page = max(1, -(-total // CATALOGUE_PAGE_SIZE))
    return render(
        request,
        "home.html",
        {
            "filters": filters,
            "products": products,
            "total": total,
            "categories": categories["data"],
            "sorts": SORTS,
            "problem": problem,
            "last_page": last_page,
            "page_numbers": page_numbers(filters.page, last_page),
        },
    )


async def product_page(request: web.Request) -> web.Response:
    path = f"/api/products/{product_id_of(request)}"
    reply = await call_backend_or_raise(
        request, "product", "GET", path, as_shopper=False, not_found=PRODUCT_NOT_FOUND
    )
    product = reply["data"]
    return render(
        request,
        "product.html",
        {"product": product, "max_quantity": min(product["stock"], MAX_CART_QUANTITY)},
    )
