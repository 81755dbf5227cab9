package quotaecho_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/quotakit/quota"
	quotaecho "github.com/quotakit/quota/contrib/echo"
)

func ExampleMiddleware() {
	ctx := context.Background()
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
		Plans: []quota.Plan{{Name: "FREE", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(2)}}}},
		Now:   func() time.Time { return time.Date(2026, 1, 8, 9, 29, 0, 0, time.UTC) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()
	err = q.Subscribe(ctx, quota.Subscription{Subject: "alice", Plan: "FREE", Anchor: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		log.Fatal(err)
	}

	e := echo.New()
	// The app's authentication names the user in echo's context; here a
	// demo bearer token does. Real apps verify a session or a token.
	e.Use(func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if user, ok := strings.CutPrefix(c.Request().Header.Get("Authorization"), "Bearer "); ok {
				c.Set("user", user)
			}
			return next(c)
		}
	})
	subject := func(c echo.Context) (string, error) {
		if user, ok := c.Get("user").(string); ok {
			return user, nil
		}
		return "", errors.New("not signed in")
	}
	e.POST("/diagrams", func(c echo.Context) error {
		if c.QueryParam("name") == "" {
			return echo.NewHTTPError(http.StatusBadRequest, "name the diagram") // not counted
		}
		d, _ := quota.FromContext(c.Request().Context())
		return c.String(http.StatusCreated, fmt.Sprintf("uploaded; %d of %d used", d.Used, d.Limit))
	}, quotaecho.Middleware(q, "diagram.upload", subject))

	for _, target := range []string{"/diagrams", "/diagrams?name=a", "/diagrams?name=b", "/diagrams?name=c"} {
		req := httptest.NewRequest("POST", target, nil)
		req.Header.Set("Authorization", "Bearer alice")
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		fmt.Printf("%s: %d %s\n", target, rec.Code, strings.TrimSpace(rec.Body.String()))
	}
	// Output:
	// /diagrams: 400 {"message":"name the diagram"}
	// /diagrams?name=a: 201 uploaded; 1 of 2 used
	// /diagrams?name=b: 201 uploaded; 2 of 2 used
	// /diagrams?name=c: 429 {"type":"https://quotakit.dev/problems/quota-exceeded","title":"Quota exceeded","status":429,"detail":"The FREE plan allows 2 diagram.upload per month; 2 are used. The limit resets at 2026-02-01T00:00:00Z.","action":"diagram.upload","plan":"FREE","used":2,"limit":2,"remaining":0,"percent":100,"level":"exceeded","reset_at":"2026-02-01T00:00:00Z"}
}
