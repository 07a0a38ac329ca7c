-- The catalog: restaurants from the OpenStreetMap extract and their generated menus.

-- cuisines is the OSM cuisine list, `;`-separated (`pizza;kebab`). city_key is the
-- city lowercased by the service, because SQLite's LOWER folds only ASCII letters and
-- PostgreSQL's folds all of them, so folding in SQL would filter differently on the
-- two engines.
CREATE TABLE restaurants (
    id            TEXT             PRIMARY KEY,
    name          TEXT             NOT NULL,
    amenity       TEXT             NOT NULL,
    cuisines      TEXT             NOT NULL,
    lat           DOUBLE PRECISION NOT NULL,
    lon           DOUBLE PRECISION NOT NULL,
    opening_hours TEXT,
    street        TEXT,
    housenumber   TEXT,
    postcode      TEXT,
    city          TEXT             NOT NULL,
    city_key      TEXT             NOT NULL
);

CREATE INDEX restaurants_city ON restaurants (city_key, id);

-- One row per value of restaurants.cuisines, lowercased by the service, so the
-- cuisine filter is an indexed equality instead of a LIKE over the raw list.
CREATE TABLE restaurant_cuisines (
    cuisine       TEXT NOT NULL,
    restaurant_id TEXT NOT NULL REFERENCES restaurants (id),
    PRIMARY KEY (cuisine, restaurant_id)
);

-- position is the item's place on its menu, counting from 1; ordering by id would
-- sort `-10` before `-2`.
CREATE TABLE menu_items (
    id            TEXT    PRIMARY KEY,
    restaurant_id TEXT    NOT NULL REFERENCES restaurants (id),
    position      INTEGER NOT NULL,
    name          TEXT    NOT NULL,
    price_cents   BIGINT  NOT NULL,
    currency      TEXT    NOT NULL,
    available     INTEGER NOT NULL,
    revision      BIGINT  NOT NULL
);

CREATE INDEX menu_items_restaurant ON menu_items (restaurant_id, position);

CREATE TABLE outbox (
    event_id   TEXT   PRIMARY KEY,
    envelope   TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
