package quotagin_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/quotakit/quota"
	quotagin "github.com/quotakit/quota/contrib/gin"
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

	r := gin.New()
	// The app's authentication names the user in gin's context; here a
	// demo bearer token does. Real apps verify a session or a token.
	r.Use(func(c *gin.Context) {
		if user, ok := strings.CutPrefix(c.GetHeader("Authorization"), "Bearer "); ok {
			c.Set("user", user)
		}
	})
	subject := func(c *gin.Context) (string, error) {
		if user := c.GetString("user"); user != "" {
			return user, nil
		}
		return "", errors.New("not signed in")
	}
	r.POST("/diagrams", quotagin.Middleware(q, "diagram.upload", subject), func(c *gin.Context) {
		if c.Query("name") == "" {
			c.AbortWithStatusJSON(http.StatusBadRequest, gin.H{"error": "name the diagram"}) // not counted
			return
		}
		d, _ := quota.FromContext(c.Request.Context())
		c.String(http.StatusCreated, "uploaded; %d of %d used", d.Used, d.Limit)
	})

	for _, target := range []string{"/diagrams", "/diagrams?name=a", "/diagrams?name=b", "/diagrams?name=c"} {
		req := httptest.NewRequest("POST", target, nil)
		req.Header.Set("Authorization", "Bearer alice")
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		fmt.Printf("%s: %d %s\n", target, rec.Code, strings.TrimSpace(rec.Body.String()))
	}
	// Output:
	// /diagrams: 400 {"error":"name the diagram"}
	// /diagrams?name=a: 201 uploaded; 1 of 2 used
	// /diagrams?name=b: 201 uploaded; 2 of 2 used
	// /diagrams?name=c: 429 {"type":"https://quotakit.dev/problems/quota-exceeded","title":"Quota exceeded","status":429,"detail":"The FREE plan allows 2 diagram.upload per month; 2 are used. The limit resets at 2026-02-01T00:00:00Z.","action":"diagram.upload","plan":"FREE","used":2,"limit":2,"remaining":0,"percent":100,"level":"exceeded","reset_at":"2026-02-01T00:00:00Z"}
}
