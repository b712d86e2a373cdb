# Multi-stage build of heirloom. Built with the goolm tag (pure-Go Olm); cgo stays on for SQLite.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -tags=goolm -trimpath -ldflags="-s -w" -o /out/heirloom .

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 1337 --home-dir /data heirloom \
    && mkdir -p /data && chown heirloom /data
COPY --from=build /out/heirloom /usr/local/bin/heirloom
USER heirloom
WORKDIR /data
VOLUME /data
EXPOSE 29340
# /data holds config.yaml, registration.yaml and the SQLite database.
# First run: docker run -v heirloom:/data IMAGE heirloom -e -c /data/config.yaml, edit it, then -g.
CMD ["heirloom", "-c", "/data/config.yaml"]
