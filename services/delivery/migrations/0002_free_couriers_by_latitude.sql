-- The nearest-courier search reads a square of the map around a restaurant
-- instead of ranking the whole fleet, through the free couriers ordered by
-- latitude.
CREATE INDEX couriers_free_by_lat ON couriers (lat, lon) WHERE status = 'free';
